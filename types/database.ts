export type Json =
  | string
  | number
  | boolean
  | null
  | { [key: string]: Json | undefined }
  | Json[]

export type Database = {
  billing: {
    Tables: {
      account_members: {
        Row: {
          account_id: string
          created_at: string
          period_spent: number
          period_start: string | null
          role: string
          spend_limit: number | null
          spend_limit_period: string | null
          user_id: string
        }
        Insert: {
          account_id: string
          created_at?: string
          period_spent?: number
          period_start?: string | null
          role?: string
          spend_limit?: number | null
          spend_limit_period?: string | null
          user_id: string
        }
        Update: {
          account_id?: string
          created_at?: string
          period_spent?: number
          period_start?: string | null
          role?: string
          spend_limit?: number | null
          spend_limit_period?: string | null
          user_id?: string
        }
        Relationships: [
          {
            foreignKeyName: "account_members_account_id_fkey"
            columns: ["account_id"]
            referencedRelation: "accounts"
            referencedColumns: ["id"]
          },
        ]
      }
      account_settings: {
        Row: {
          account_id: string
          alerts_sent: number
          auto_topup_cooldown: string
          auto_topup_monthly_limit: number
          auto_topup_price_id: string | null
          auto_topup_threshold: number | null
          depleted_armed: boolean
          low_balance_armed: boolean
          low_balance_threshold: number | null
          topup_disabled_at: string | null
          topup_failures: number
          topup_month_count: number
          topup_month_start: string | null
          topup_requested_at: string | null
          topup_requests: number
          updated_at: string
        }
        Insert: {
          account_id: string
          alerts_sent?: number
          auto_topup_cooldown?: string
          auto_topup_monthly_limit?: number
          auto_topup_price_id?: string | null
          auto_topup_threshold?: number | null
          depleted_armed?: boolean
          low_balance_armed?: boolean
          low_balance_threshold?: number | null
          topup_disabled_at?: string | null
          topup_failures?: number
          topup_month_count?: number
          topup_month_start?: string | null
          topup_requested_at?: string | null
          topup_requests?: number
          updated_at?: string
        }
        Update: {
          account_id?: string
          alerts_sent?: number
          auto_topup_cooldown?: string
          auto_topup_monthly_limit?: number
          auto_topup_price_id?: string | null
          auto_topup_threshold?: number | null
          depleted_armed?: boolean
          low_balance_armed?: boolean
          low_balance_threshold?: number | null
          topup_disabled_at?: string | null
          topup_failures?: number
          topup_month_count?: number
          topup_month_start?: string | null
          topup_requested_at?: string | null
          topup_requests?: number
          updated_at?: string
        }
        Relationships: [
          {
            foreignKeyName: "account_settings_auto_topup_price_id_fkey"
            columns: ["auto_topup_price_id"]
            referencedRelation: "token_packs"
            referencedColumns: ["stripe_price_id"]
          },
        ]
      }
      accounts: {
        Row: {
          created_at: string
          id: string
          kind: string
          name: string
        }
        Insert: {
          created_at?: string
          id?: string
          kind?: string
          name: string
        }
        Update: {
          created_at?: string
          id?: string
          kind?: string
          name?: string
        }
        Relationships: []
      }
      alert_checks: {
        Row: {
          account_id: string
        }
        Insert: {
          account_id: string
        }
        Update: {
          account_id?: string
        }
        Relationships: []
      }
      balances: {
        Row: {
          account_id: string
          alert_above: number | null
          alert_below: number | null
          debt: number
          head_grant_id: number | null
          head_remaining: number
          held: number
          next_event_at: string | null
          plan_code: string | null
          rate_state: number[] | null
          spendable: number
          updated_at: string
        }
        Insert: {
          account_id: string
          alert_above?: number | null
          alert_below?: number | null
          debt?: number
          head_grant_id?: number | null
          head_remaining?: number
          held?: number
          next_event_at?: string | null
          plan_code?: string | null
          rate_state?: number[] | null
          spendable?: number
          updated_at?: string
        }
        Update: {
          account_id?: string
          alert_above?: number | null
          alert_below?: number | null
          debt?: number
          head_grant_id?: number | null
          head_remaining?: number
          held?: number
          next_event_at?: string | null
          plan_code?: string | null
          rate_state?: number[] | null
          spendable?: number
          updated_at?: string
        }
        Relationships: []
      }
      grant_purchases: {
        Row: {
          account_id: string
          allowance: number
          amount: number
          currency: string
          grant_id: number
          kind: string
          period_end: string | null
          plan_id: number | null
          purchase_id: string
          purchased_at: string
          stripe_subscription_id: string | null
        }
        Insert: {
          account_id: string
          allowance: number
          amount: number
          currency: string
          grant_id: number
          kind: string
          period_end?: string | null
          plan_id?: number | null
          purchase_id: string
          purchased_at: string
          stripe_subscription_id?: string | null
        }
        Update: {
          account_id?: string
          allowance?: number
          amount?: number
          currency?: string
          grant_id?: number
          kind?: string
          period_end?: string | null
          plan_id?: number | null
          purchase_id?: string
          purchased_at?: string
          stripe_subscription_id?: string | null
        }
        Relationships: [
          {
            foreignKeyName: "grant_purchases_account_id_grant_id_fkey"
            columns: ["account_id", "grant_id"]
            referencedRelation: "token_grants"
            referencedColumns: ["account_id", "id"]
          },
          {
            foreignKeyName: "grant_purchases_plan_id_fkey"
            columns: ["plan_id"]
            referencedRelation: "plans"
            referencedColumns: ["id"]
          },
        ]
      }
      model_prices: {
        Row: {
          cached_input_per_million: number
          input_per_million: number
          model: string
          output_per_million: number
          valid_from: string
        }
        Insert: {
          cached_input_per_million?: number
          input_per_million: number
          model: string
          output_per_million: number
          valid_from?: string
        }
        Update: {
          cached_input_per_million?: number
          input_per_million?: number
          model?: string
          output_per_million?: number
          valid_from?: string
        }
        Relationships: []
      }
      outbox: {
        Row: {
          account_id: string
          acked_at: string | null
          attempts: number
          available_at: string
          created_at: string
          dedupe_key: string
          event_type: string
          id: number
          last_error: string | null
          payload: NonNullable<Json>
        }
        Insert: {
          account_id: string
          acked_at?: string | null
          attempts?: number
          available_at?: string
          created_at?: string
          dedupe_key: string
          event_type: string
          id?: never
          last_error?: string | null
          payload: NonNullable<Json>
        }
        Update: {
          account_id?: string
          acked_at?: string | null
          attempts?: number
          available_at?: string
          created_at?: string
          dedupe_key?: string
          event_type?: string
          id?: never
          last_error?: string | null
          payload?: NonNullable<Json>
        }
        Relationships: []
      }
      payment_transactions: {
        Row: {
          account_id: string | null
          api_version: string | null
          attempts: number
          error: Json | null
          event_created: string
          event_type: string
          livemode: boolean | null
          outcome: NonNullable<Json>
          payload: NonNullable<Json>
          processed_at: string
          received_at: string
          status: string
          stripe_customer: string | null
          stripe_event_id: string
        }
        Insert: {
          account_id?: string | null
          api_version?: string | null
          attempts?: number
          error?: Json | null
          event_created: string
          event_type: string
          livemode?: boolean | null
          outcome?: NonNullable<Json>
          payload: NonNullable<Json>
          processed_at?: string
          received_at?: string
          status: string
          stripe_customer?: string | null
          stripe_event_id: string
        }
        Update: {
          account_id?: string | null
          api_version?: string | null
          attempts?: number
          error?: Json | null
          event_created?: string
          event_type?: string
          livemode?: boolean | null
          outcome?: NonNullable<Json>
          payload?: NonNullable<Json>
          processed_at?: string
          received_at?: string
          status?: string
          stripe_customer?: string | null
          stripe_event_id?: string
        }
        Relationships: []
      }
      plans: {
        Row: {
          active: boolean
          code: string
          created_at: string
          currency: string
          grant_on_zero_amount: boolean
          id: number
          name: string
          price_amount: number
          rollover: boolean
          stripe_price_id: string
          tokens_per_period: number
        }
        Insert: {
          active?: boolean
          code: string
          created_at?: string
          currency?: string
          grant_on_zero_amount?: boolean
          id?: never
          name?: string
          price_amount?: number
          rollover?: boolean
          stripe_price_id: string
          tokens_per_period: number
        }
        Update: {
          active?: boolean
          code?: string
          created_at?: string
          currency?: string
          grant_on_zero_amount?: boolean
          id?: never
          name?: string
          price_amount?: number
          rollover?: boolean
          stripe_price_id?: string
          tokens_per_period?: number
        }
        Relationships: []
      }
      promo_codes: {
        Row: {
          active: boolean
          code: string
          created_at: string
          max_redemptions: number | null
          redeemed_count: number
          token_lifetime: string | null
          tokens: number
          valid_until: string | null
        }
        Insert: {
          active?: boolean
          code: string
          created_at?: string
          max_redemptions?: number | null
          redeemed_count?: number
          token_lifetime?: string | null
          tokens: number
          valid_until?: string | null
        }
        Update: {
          active?: boolean
          code?: string
          created_at?: string
          max_redemptions?: number | null
          redeemed_count?: number
          token_lifetime?: string | null
          tokens?: number
          valid_until?: string | null
        }
        Relationships: []
      }
      promo_redemptions: {
        Row: {
          account_id: string
          code: string
          grant_id: number
          redeemed_at: string
        }
        Insert: {
          account_id: string
          code: string
          grant_id: number
          redeemed_at?: string
        }
        Update: {
          account_id?: string
          code?: string
          grant_id?: number
          redeemed_at?: string
        }
        Relationships: [
          {
            foreignKeyName: "promo_redemptions_account_id_grant_id_fkey"
            columns: ["account_id", "grant_id"]
            referencedRelation: "token_grants"
            referencedColumns: ["account_id", "id"]
          },
          {
            foreignKeyName: "promo_redemptions_code_fkey"
            columns: ["code"]
            referencedRelation: "promo_codes"
            referencedColumns: ["code"]
          },
        ]
      }
      purchase_payments: {
        Row: {
          amount: number
          payment_key: string
          purchase_id: string
        }
        Insert: {
          amount: number
          payment_key: string
          purchase_id: string
        }
        Update: {
          amount?: number
          payment_key?: string
          purchase_id?: string
        }
        Relationships: []
      }
      rate_limits: {
        Row: {
          created_at: string
          id: number
          max_amount: number
          metric: string
          plan_code: string | null
          window_seconds: number
        }
        Insert: {
          created_at?: string
          id?: never
          max_amount: number
          metric: string
          plan_code?: string | null
          window_seconds: number
        }
        Update: {
          created_at?: string
          id?: never
          max_amount?: number
          metric?: string
          plan_code?: string | null
          window_seconds?: number
        }
        Relationships: [
          {
            foreignKeyName: "rate_limits_plan_code_fkey"
            columns: ["plan_code"]
            referencedRelation: "plans"
            referencedColumns: ["code"]
          },
        ]
      }
      settings: {
        Row: {
          id: boolean
          stripe_account: string | null
          stripe_livemode: boolean
          updated_at: string
        }
        Insert: {
          id?: boolean
          stripe_account?: string | null
          stripe_livemode?: boolean
          updated_at?: string
        }
        Update: {
          id?: boolean
          stripe_account?: string | null
          stripe_livemode?: boolean
          updated_at?: string
        }
        Relationships: []
      }
      stripe_customers: {
        Row: {
          account_id: string
          created_at: string
          stripe_customer_id: string
        }
        Insert: {
          account_id: string
          created_at?: string
          stripe_customer_id: string
        }
        Update: {
          account_id?: string
          created_at?: string
          stripe_customer_id?: string
        }
        Relationships: []
      }
      stripe_disputes: {
        Row: {
          amount: number
          currency: string | null
          dispute_id: string
          last_event_created: string
          last_event_id: string
          payment_key: string
          status: string
        }
        Insert: {
          amount: number
          currency?: string | null
          dispute_id: string
          last_event_created: string
          last_event_id: string
          payment_key: string
          status: string
        }
        Update: {
          amount?: number
          currency?: string | null
          dispute_id?: string
          last_event_created?: string
          last_event_id?: string
          payment_key?: string
          status?: string
        }
        Relationships: []
      }
      stripe_payments: {
        Row: {
          amount_captured: number | null
          charge_id: string | null
          currency: string | null
          payment_key: string
          refunded_reported: number
          updated_at: string
        }
        Insert: {
          amount_captured?: number | null
          charge_id?: string | null
          currency?: string | null
          payment_key: string
          refunded_reported?: number
          updated_at?: string
        }
        Update: {
          amount_captured?: number | null
          charge_id?: string | null
          currency?: string | null
          payment_key?: string
          refunded_reported?: number
          updated_at?: string
        }
        Relationships: []
      }
      stripe_refunds: {
        Row: {
          amount: number
          currency: string | null
          last_event_created: string
          last_event_id: string
          payment_key: string
          refund_id: string
          status: string
        }
        Insert: {
          amount: number
          currency?: string | null
          last_event_created: string
          last_event_id: string
          payment_key: string
          refund_id: string
          status: string
        }
        Update: {
          amount?: number
          currency?: string | null
          last_event_created?: string
          last_event_id?: string
          payment_key?: string
          refund_id?: string
          status?: string
        }
        Relationships: []
      }
      token_grants: {
        Row: {
          account_id: string
          amount_paid: number | null
          clawed_back: number
          created_at: string
          currency: string | null
          debt_incurred: number
          debt_repaid: number
          expired: number
          expires_at: string | null
          freeze_target: number
          frozen: number
          id: number
          kind: string
          metadata: NonNullable<Json>
          reference: string
          remaining: number
          stripe_payment_intent: string | null
          stripe_price_id: string | null
          tokens: number
        }
        Insert: {
          account_id: string
          amount_paid?: number | null
          clawed_back?: number
          created_at?: string
          currency?: string | null
          debt_incurred?: number
          debt_repaid?: number
          expired?: number
          expires_at?: string | null
          freeze_target?: number
          frozen?: number
          id?: never
          kind: string
          metadata?: NonNullable<Json>
          reference: string
          remaining: number
          stripe_payment_intent?: string | null
          stripe_price_id?: string | null
          tokens: number
        }
        Update: {
          account_id?: string
          amount_paid?: number | null
          clawed_back?: number
          created_at?: string
          currency?: string | null
          debt_incurred?: number
          debt_repaid?: number
          expired?: number
          expires_at?: string | null
          freeze_target?: number
          frozen?: number
          id?: never
          kind?: string
          metadata?: NonNullable<Json>
          reference?: string
          remaining?: number
          stripe_payment_intent?: string | null
          stripe_price_id?: string | null
          tokens?: number
        }
        Relationships: []
      }
      token_packs: {
        Row: {
          active: boolean
          created_at: string
          currency: string
          id: number
          name: string
          price_amount: number
          stripe_price_id: string
          tokens: number
        }
        Insert: {
          active?: boolean
          created_at?: string
          currency?: string
          id?: never
          name?: string
          price_amount?: number
          stripe_price_id: string
          tokens: number
        }
        Update: {
          active?: boolean
          created_at?: string
          currency?: string
          id?: never
          name?: string
          price_amount?: number
          stripe_price_id?: string
          tokens?: number
        }
        Relationships: []
      }
      token_reservations: {
        Row: {
          account_id: string
          committed_tokens: number | null
          created_at: string
          drawn_from: number[]
          expires_at: string
          id: string
          idempotency_key: string | null
          limit_period_start: string | null
          metadata: NonNullable<Json>
          rate_windows: number[] | null
          settled_at: string | null
          status: string
          tokens: number
          usage_id: number | null
          user_id: string | null
        }
        Insert: {
          account_id: string
          committed_tokens?: number | null
          created_at?: string
          drawn_from: number[]
          expires_at: string
          id?: string
          idempotency_key?: string | null
          limit_period_start?: string | null
          metadata?: NonNullable<Json>
          rate_windows?: number[] | null
          settled_at?: string | null
          status?: string
          tokens: number
          usage_id?: number | null
          user_id?: string | null
        }
        Update: {
          account_id?: string
          committed_tokens?: number | null
          created_at?: string
          drawn_from?: number[]
          expires_at?: string
          id?: string
          idempotency_key?: string | null
          limit_period_start?: string | null
          metadata?: NonNullable<Json>
          rate_windows?: number[] | null
          settled_at?: string | null
          status?: string
          tokens?: number
          usage_id?: number | null
          user_id?: string | null
        }
        Relationships: []
      }
      token_usage: {
        Row: {
          account_id: string
          balance_after: number
          created_at: string
          drawn_from: number[]
          id: number
          idempotency_key: string | null
          metadata: NonNullable<Json>
          reservation_id: string | null
          tokens: number
          user_id: string | null
        }
        Insert: {
          account_id: string
          balance_after: number
          created_at?: string
          drawn_from: number[]
          id?: never
          idempotency_key?: string | null
          metadata?: NonNullable<Json>
          reservation_id?: string | null
          tokens: number
          user_id?: string | null
        }
        Update: {
          account_id?: string
          balance_after?: number
          created_at?: string
          drawn_from?: number[]
          id?: never
          idempotency_key?: string | null
          metadata?: NonNullable<Json>
          reservation_id?: string | null
          tokens?: number
          user_id?: string | null
        }
        Relationships: []
      }
      usage_rollup_state: {
        Row: {
          candidate_at: string | null
          candidate_xmax: unknown
          id: boolean
          rolled_up_to: string
        }
        Insert: {
          candidate_at?: string | null
          candidate_xmax?: unknown
          id?: boolean
          rolled_up_to?: string
        }
        Update: {
          candidate_at?: string | null
          candidate_xmax?: unknown
          id?: boolean
          rolled_up_to?: string
        }
        Relationships: []
      }
      usage_rollups: {
        Row: {
          account_id: string
          cached_input_tokens: number
          hour_start: string
          input_tokens: number
          model: string | null
          output_tokens: number
          requests: number
          tokens: number
          user_id: string | null
        }
        Insert: {
          account_id: string
          cached_input_tokens?: number
          hour_start: string
          input_tokens?: number
          model?: string | null
          output_tokens?: number
          requests: number
          tokens: number
          user_id?: string | null
        }
        Update: {
          account_id?: string
          cached_input_tokens?: number
          hour_start?: string
          input_tokens?: number
          model?: string | null
          output_tokens?: number
          requests?: number
          tokens?: number
          user_id?: string | null
        }
        Relationships: []
      }
      usage_rollups_daily: {
        Row: {
          account_id: string
          cached_input_tokens: number
          day_start: string
          input_tokens: number
          model: string | null
          output_tokens: number
          requests: number
          tokens: number
          user_id: string | null
        }
        Insert: {
          account_id: string
          cached_input_tokens?: number
          day_start: string
          input_tokens?: number
          model?: string | null
          output_tokens?: number
          requests: number
          tokens: number
          user_id?: string | null
        }
        Update: {
          account_id?: string
          cached_input_tokens?: number
          day_start?: string
          input_tokens?: number
          model?: string | null
          output_tokens?: number
          requests?: number
          tokens?: number
          user_id?: string | null
        }
        Relationships: []
      }
      user_subscriptions: {
        Row: {
          account_id: string
          cancel_at_period_end: boolean
          canceled_at: string | null
          created_at: string
          current_period_end: string | null
          current_period_start: string | null
          last_event_created: string
          last_event_id: string
          plan_id: number | null
          status: string
          stripe_price_id: string | null
          stripe_subscription_id: string
          updated_at: string
        }
        Insert: {
          account_id: string
          cancel_at_period_end?: boolean
          canceled_at?: string | null
          created_at?: string
          current_period_end?: string | null
          current_period_start?: string | null
          last_event_created: string
          last_event_id: string
          plan_id?: number | null
          status: string
          stripe_price_id?: string | null
          stripe_subscription_id: string
          updated_at?: string
        }
        Update: {
          account_id?: string
          cancel_at_period_end?: boolean
          canceled_at?: string | null
          created_at?: string
          current_period_end?: string | null
          current_period_start?: string | null
          last_event_created?: string
          last_event_id?: string
          plan_id?: number | null
          status?: string
          stripe_price_id?: string | null
          stripe_subscription_id?: string
          updated_at?: string
        }
        Relationships: [
          {
            foreignKeyName: "user_subscriptions_plan_id_fkey"
            columns: ["plan_id"]
            referencedRelation: "plans"
            referencedColumns: ["id"]
          },
        ]
      }
      webhook_secrets: {
        Row: {
          active: boolean
          created_at: string
          description: string
          id: number
          secret: string
        }
        Insert: {
          active?: boolean
          created_at?: string
          description?: string
          id?: never
          secret: string
        }
        Update: {
          active?: boolean
          created_at?: string
          description?: string
          id?: never
          secret?: string
        }
        Relationships: []
      }
    }
    Views: {
      rate_limit_usage: {
        Row: {
          account_id: string | null
          limit_id: number | null
          used: number | null
          window_start: string | null
        }
        Relationships: []
      }
    }
    Functions: {
      ack_outbox: { Args: { p_ids: number[] }; Returns: number }
      add_account_member: {
        Args: {
          p_account_id: string
          p_role?: string
          p_spend_limit?: number
          p_spend_limit_period?: string
          p_user_id: string
        }
        Returns: {
          account_id: string
          created_at: string
          period_spent: number
          period_start: string | null
          role: string
          spend_limit: number | null
          spend_limit_period: string | null
          user_id: string
        }
        SetofOptions: {
          from: "*"
          to: "account_members"
          isOneToOne: true
          isSetofReturn: false
        }
      }
      claim_outbox: {
        Args: { p_limit?: number; p_visibility?: string }
        Returns: {
          account_id: string
          acked_at: string | null
          attempts: number
          available_at: string
          created_at: string
          dedupe_key: string
          event_type: string
          id: number
          last_error: string | null
          payload: NonNullable<Json>
        }[]
        SetofOptions: {
          from: "*"
          to: "outbox"
          isOneToOne: false
          isSetofReturn: true
        }
      }
      commit_llm_usage: {
        Args: {
          p_cached_input_tokens?: number
          p_input_tokens: number
          p_output_tokens: number
          p_reservation_id: string
        }
        Returns: {
          balance_after: number
          replayed: boolean
          tokens_charged: number
          tokens_released: number
          usage_id: number
        }[]
      }
      commit_reservation: {
        Args: { p_actual_amount: number; p_reservation_id: string }
        Returns: {
          balance_after: number
          replayed: boolean
          tokens_charged: number
          tokens_released: number
          usage_id: number
        }[]
      }
      consume_tokens: {
        Args: {
          p_account_id?: string
          p_amount: number
          p_idempotency_key?: string
          p_metadata?: Json
          p_user_id: string
        }
        Returns: {
          balance_after: number
          replayed: boolean
          tokens_charged: number
          usage_id: number
        }[]
      }
      create_team_account: {
        Args: { p_name: string; p_owner?: string }
        Returns: string
      }
      get_accounts: {
        Args: Record<PropertyKey, never>
        Returns: {
          account_id: string
          balance: number
          kind: string
          name: string
          remaining_limit: number
          role: string
          spend_limit: number
          spend_limit_period: string
          spent_this_period: number
        }[]
      }
      get_balance: {
        Args: { p_account_id?: string; p_user_id: string }
        Returns: number
      }
      get_billing_summary: { Args: { p_account_id?: string }; Returns: Json }
      get_grant_history: {
        Args: { p_account_id?: string; p_limit?: number; p_offset?: number }
        Returns: {
          clawed_back: number
          created_at: string
          expired: number
          expires_at: string
          frozen: number
          grant_id: number
          kind: string
          remaining: number
          tokens: number
        }[]
      }
      get_payment_history: {
        Args: { p_account_id?: string; p_limit?: number; p_offset?: number }
        Returns: {
          action: string
          amount: number
          currency: string
          event_created: string
          event_id: string
          event_type: string
          hosted_invoice_url: string
          invoice_pdf: string
          status: string
          tokens: number
        }[]
      }
      get_usage_history: {
        Args: {
          p_account_id?: string
          p_bucket?: string
          p_from?: string
          p_group_by?: string
          p_to?: string
        }
        Returns: {
          bucket: string
          cached_input_tokens: number
          group_key: string
          input_tokens: number
          output_tokens: number
          requests: number
          tokens: number
        }[]
      }
      grant_purchase: {
        Args: {
          p_account_id?: string
          p_expires_at?: string
          p_kind?: string
          p_metadata?: Json
          p_reference: string
          p_tokens: number
          p_user_id: string
        }
        Returns: {
          balance_after: number
          grant_id: number
          replayed: boolean
          tokens: number
        }[]
      }
      handle_stripe_webhook: {
        Args: {
          p_payload: string
          p_secret?: string
          p_signature_header: string
        }
        Returns: Json
      }
      llm_cost: {
        Args: {
          p_cached_input_tokens?: number
          p_input_tokens: number
          p_model: string
          p_output_tokens: number
        }
        Returns: number
      }
      nack_outbox: {
        Args: { p_error: string; p_id: number; p_retry_in?: string }
        Returns: boolean
      }
      record_llm_usage: {
        Args: {
          p_account_id?: string
          p_cached_input_tokens?: number
          p_idempotency_key?: string
          p_input_tokens: number
          p_metadata?: Json
          p_model: string
          p_output_tokens: number
          p_user_id: string
        }
        Returns: {
          balance_after: number
          replayed: boolean
          tokens_charged: number
          usage_id: number
        }[]
      }
      redeem_promo_code: {
        Args: { p_code: string }
        Returns: {
          balance_after: number
          expires_at: string
          grant_id: number
          tokens: number
        }[]
      }
      release_reservation: {
        Args: { p_reservation_id: string }
        Returns: {
          balance_after: number
          replayed: boolean
          tokens_released: number
        }[]
      }
      remove_account_member: {
        Args: { p_account_id: string; p_user_id: string }
        Returns: boolean
      }
      reprocess_failed_events: {
        Args: Record<PropertyKey, never>
        Returns: number
      }
      reserve_llm_usage: {
        Args: {
          p_account_id?: string
          p_idempotency_key: string
          p_input_tokens: number
          p_max_output_tokens: number
          p_model: string
          p_ttl?: string
          p_user_id: string
        }
        Returns: {
          balance_after: number
          expires_at: string
          replayed: boolean
          reservation_id: string
          tokens_held: number
        }[]
      }
      reserve_tokens: {
        Args: {
          p_account_id?: string
          p_amount: number
          p_idempotency_key: string
          p_ttl?: string
          p_user_id: string
        }
        Returns: {
          balance_after: number
          expires_at: string
          replayed: boolean
          reservation_id: string
          tokens_held: number
        }[]
      }
      run_maintenance: { Args: { p_limit?: number }; Returns: number }
      stripe_signature_rejection: {
        Args: {
          p_payload: string
          p_secret: string
          p_signature_header: string
          p_tolerance_seconds?: number
        }
        Returns: string
      }
      verify_ledger: {
        Args: Record<PropertyKey, never>
        Returns: {
          account_id: string
          detail: string
          invariant: string
        }[]
      }
      verify_stripe_signature:
        | {
            Args: {
              p_payload: string
              p_secret: string
              p_signature_header: string
              p_tolerance_seconds?: number
            }
            Returns: boolean
          }
        | {
            Args: {
              p_payload: string
              p_secret: string
              p_signature_header: string
              p_tolerance_seconds?: number
            }
            Returns: boolean
          }
    }
    Enums: {
      [_ in never]: never
    }
    CompositeTypes: {
      [_ in never]: never
    }
  }
}

type DatabaseWithoutInternals = Omit<Database, "__InternalSupabase">

type DefaultSchema = DatabaseWithoutInternals[Extract<keyof Database, "public">]

export type Tables<
  DefaultSchemaTableNameOrOptions extends
    | keyof (DefaultSchema["Tables"] & DefaultSchema["Views"])
    | { schema: keyof DatabaseWithoutInternals },
  TableName extends (DefaultSchemaTableNameOrOptions extends {
    schema: keyof DatabaseWithoutInternals
  }
    ? keyof (DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Tables"] &
        DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Views"])
    : never) = never,
> = DefaultSchemaTableNameOrOptions extends {
  schema: keyof DatabaseWithoutInternals
}
  ? (DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Tables"] &
      DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Views"])[TableName] extends {
      Row: infer R
    }
    ? R
    : never
  : DefaultSchemaTableNameOrOptions extends keyof (DefaultSchema["Tables"] &
        DefaultSchema["Views"])
    ? (DefaultSchema["Tables"] &
        DefaultSchema["Views"])[DefaultSchemaTableNameOrOptions] extends {
        Row: infer R
      }
      ? R
      : never
    : never

export type TablesInsert<
  DefaultSchemaTableNameOrOptions extends
    | keyof DefaultSchema["Tables"]
    | { schema: keyof DatabaseWithoutInternals },
  TableName extends (DefaultSchemaTableNameOrOptions extends {
    schema: keyof DatabaseWithoutInternals
  }
    ? keyof DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Tables"]
    : never) = never,
> = DefaultSchemaTableNameOrOptions extends {
  schema: keyof DatabaseWithoutInternals
}
  ? DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Tables"][TableName] extends {
      Insert: infer I
    }
    ? I
    : never
  : DefaultSchemaTableNameOrOptions extends keyof DefaultSchema["Tables"]
    ? DefaultSchema["Tables"][DefaultSchemaTableNameOrOptions] extends {
        Insert: infer I
      }
      ? I
      : never
    : never

export type TablesUpdate<
  DefaultSchemaTableNameOrOptions extends
    | keyof DefaultSchema["Tables"]
    | { schema: keyof DatabaseWithoutInternals },
  TableName extends (DefaultSchemaTableNameOrOptions extends {
    schema: keyof DatabaseWithoutInternals
  }
    ? keyof DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Tables"]
    : never) = never,
> = DefaultSchemaTableNameOrOptions extends {
  schema: keyof DatabaseWithoutInternals
}
  ? DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Tables"][TableName] extends {
      Update: infer U
    }
    ? U
    : never
  : DefaultSchemaTableNameOrOptions extends keyof DefaultSchema["Tables"]
    ? DefaultSchema["Tables"][DefaultSchemaTableNameOrOptions] extends {
        Update: infer U
      }
      ? U
      : never
    : never

export type Enums<
  DefaultSchemaEnumNameOrOptions extends
    | keyof DefaultSchema["Enums"]
    | { schema: keyof DatabaseWithoutInternals },
  EnumName extends (DefaultSchemaEnumNameOrOptions extends {
    schema: keyof DatabaseWithoutInternals
  }
    ? keyof DatabaseWithoutInternals[DefaultSchemaEnumNameOrOptions["schema"]]["Enums"]
    : never) = never,
> = DefaultSchemaEnumNameOrOptions extends {
  schema: keyof DatabaseWithoutInternals
}
  ? DatabaseWithoutInternals[DefaultSchemaEnumNameOrOptions["schema"]]["Enums"][EnumName]
  : DefaultSchemaEnumNameOrOptions extends keyof DefaultSchema["Enums"]
    ? DefaultSchema["Enums"][DefaultSchemaEnumNameOrOptions]
    : never

export type CompositeTypes<
  PublicCompositeTypeNameOrOptions extends
    | keyof DefaultSchema["CompositeTypes"]
    | { schema: keyof DatabaseWithoutInternals },
  CompositeTypeName extends (PublicCompositeTypeNameOrOptions extends {
    schema: keyof DatabaseWithoutInternals
  }
    ? keyof DatabaseWithoutInternals[PublicCompositeTypeNameOrOptions["schema"]]["CompositeTypes"]
    : never) = never,
> = PublicCompositeTypeNameOrOptions extends {
  schema: keyof DatabaseWithoutInternals
}
  ? DatabaseWithoutInternals[PublicCompositeTypeNameOrOptions["schema"]]["CompositeTypes"][CompositeTypeName]
  : PublicCompositeTypeNameOrOptions extends keyof DefaultSchema["CompositeTypes"]
    ? DefaultSchema["CompositeTypes"][PublicCompositeTypeNameOrOptions]
    : never

export const Constants = {
  billing: {
    Enums: {},
  },
} as const

